"""Django 6: plain sync views, ``ATOMIC_REQUESTS=True``, persistent connections
(``CONN_MAX_AGE=None``), under gunicorn with 1 worker and 8 threads (gthread), the way
Django usually runs.

Served from the Django venv (``.venv-django``, Python 3.12, made by the Makefile) as
``gunicorn -w 1 -k gthread --threads 8 bench.stack_apps.django_items.wsgi:application``
with ``DJANGO_SETTINGS_MODULE=bench.stack_apps.django_items.settings``. Each thread
keeps its own connection. On SQLite every request's transaction begins IMMEDIATE
(``transaction_mode``, which Django sets per database, not per transaction: reads
take the write lock too); on PostgreSQL (psycopg 3) BEGIN and COMMIT around each
request. Not type-checked: Django is not installed in the project's venv.
"""
