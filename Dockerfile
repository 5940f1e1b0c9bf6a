FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# var/ is the porting-files volume in docker-compose.yml: it must exist, owned by confab, for the volume to be.
RUN useradd --create-home confab && mkdir -p /app/var && chown -R confab /app
USER confab
EXPOSE 8000
# ASGI: a streaming reply holds a coroutine, not a worker. Workers: $WEB_CONCURRENCY (gunicorn reads it).
CMD ["gunicorn", "config.asgi:application", "--worker-class", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:8000"]
