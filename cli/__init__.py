"""The `pqz` command line: local compression tools, and later the service client."""
