"""Settings and everything generated from them. Pure and deterministic: no network, no AWS, no clock."""
