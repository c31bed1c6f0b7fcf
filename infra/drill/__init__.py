"""Load and fault drills on the local twin (``inv drill``): HAProxy for the load balancer, a group stand-in."""
