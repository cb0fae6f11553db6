# One image for every Smart Cron service (web, beat, workers, Flower); see docker-compose.yml.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SMARTCRON_MODE=production SMARTCRON_VAR_DIR=/var/lib/smartcron
RUN apt-get update && apt-get install -y --no-install-recommends default-libmysqlclient-dev pkg-config build-essential curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --create-home --home-dir /var/lib/smartcron smartcron
WORKDIR /app
COPY requirements.txt requirements-mysql.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-mysql.txt
COPY . .
# collectstatic needs a key to import settings; a random one that is thrown away with this layer.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput
USER smartcron
EXPOSE 8000
CMD ["gunicorn", "smartcron_project.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--worker-class", "gthread"]
