"""Synthetic task generators. Package data (city names) lives beside them."""
from __future__ import annotations

from .city_date import (PHRASINGS, PROMPTS, generate_city_date, load_cities, make_city_date_files, make_prompt,
                        write_city_date)

__all__ = ["PHRASINGS", "PROMPTS", "generate_city_date", "load_cities", "make_city_date_files", "make_prompt",
           "write_city_date"]
