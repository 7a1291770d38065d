"""The Starlette HTTP application for web viewers and uploads."""
