"""The dashboard: a Starlette app reading the store only through the broker's read operations.

Build it with :func:`conveyor.web.app.create_app`; ``conveyor dashboard`` serves it with uvicorn.
"""
