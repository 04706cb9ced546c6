"""Placeholder router; filled in by the collections work."""

from fastapi import APIRouter

router = APIRouter()
