"""The web benchmark's other contenders: each a FastAPI app run by uvicorn as a process."""
