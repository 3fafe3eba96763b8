"""Synthetic task generators. Package data (city names) lives beside them."""
from __future__ import annotations

from .city_date import (PHRASINGS, PROMPTS, generate_city_date, load_cities, make_city_date_files, make_prompt,
                        write_city_date)
from .weather_tool import COMPACT_TOOL, WEATHER_TOOL, generate_weather_tool, make_weather_tool_files

__all__ = ["COMPACT_TOOL", "PHRASINGS", "PROMPTS", "WEATHER_TOOL", "generate_city_date", "generate_weather_tool", "load_cities",
           "make_city_date_files", "make_prompt", "make_weather_tool_files", "write_city_date"]
