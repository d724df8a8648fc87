"""The HTTP layer of personalize: FastAPI app, auth, audit log, CDS Hooks, clinician page."""
