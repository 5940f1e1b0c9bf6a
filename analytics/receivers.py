"""Signal receivers: the audit log listens to accounts and the privileged context."""
