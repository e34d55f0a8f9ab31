# The two commands of the README:
#   make run   - set everything up and serve the app on http://127.0.0.1:8000 (embedded defaults)
#   make test  - set everything up and run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TINY := var/tiny

.PHONY: run test setup browser

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(TINY)/config.json: $(VENV)/.installed inference/tiny.py
	$(PY) -m inference make-tiny $(TINY)

# Debian's Chromium drives the browser tests (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }

setup: $(VENV)/.installed $(TINY)/config.json
	$(PY) manage.py migrate --noinput

run: setup
	$(PY) -m daphne -b 127.0.0.1 -p 8000 grokweb.asgi:application

test: $(VENV)/.installed browser
	$(PY) -m pytest
