"""Fleet attestation hub: the verifier service and the operator CLI."""
