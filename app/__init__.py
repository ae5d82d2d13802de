"""The FastAPI front end: uploads, job specs, polling, downloads. Never imports torch."""
