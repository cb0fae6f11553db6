# Smart Cron: `make run` starts everything, `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# A mysql:// DATABASE_URL (or TEST_MYSQL_URL for the tests) also installs mysqlclient.
MYSQL_REQ := $(if $(or $(findstring mysql,$(DATABASE_URL)),$(TEST_MYSQL_URL)),-r requirements-mysql.txt,)

# The MariaDB pass reads the URL from the environment (never echoed).
export TEST_MYSQL_URL

.PHONY: help install install-dev run test test-mysql lint bench check-deploy clean

help:
	@echo "make run [DEMO=1]   set up and start the whole stack (web+admin :8000, beat, workers, Flower :5555)"
	@echo "make test           install and run the full test suite (also against MariaDB when TEST_MYSQL_URL is set)"
	@echo "make lint           ruff"
	@echo "make bench          run the benchmarks in bench/"
	@echo "make check-deploy   Django's deployment checks with production settings"

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(VENV)/bin/activate
	$(PIP) install -q -r requirements.txt $(MYSQL_REQ)

install-dev: $(VENV)/bin/activate
	$(PIP) install -q -r requirements-dev.txt $(MYSQL_REQ)

run: install
	$(PY) manage.py runstack $(if $(DEMO),--demo,)

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ -n "$(TEST_MYSQL_URL)" ]; then $(MAKE) --no-print-directory test-mysql; fi

# The database-backed tests again, against a real MariaDB/MySQL server.
test-mysql: install-dev
	@# Not echoed: the URL carries the database password.
	@echo 'DATABASE_URL=$$TEST_MYSQL_URL $(PY) -m pytest -m "not nomysql" $(PYTEST_ARGS)'
	@DATABASE_URL="$$TEST_MYSQL_URL" $(PY) -m pytest -m "not nomysql" $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

bench: install-dev
	@# Quick sizes where a benchmark has them; run a file by hand for the full-size figures.
	@for b in bench/bench_*.py; do echo "== $$b"; \
	  case $$b in *bench_recording.py) $(PY) $$b --quick ;; *) $(PY) $$b ;; esac || exit 1; done

check-deploy: install
	SMARTCRON_MODE=production SECRET_KEY=$$($(PY) -c 'import secrets;print(secrets.token_urlsafe(50))') \
	ALLOWED_HOSTS=cron.example.com $(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) var .pytest_cache
