"""Everything that runs outside Python: AWS (boto3), Packer, QEMU, the linters, the host services."""
