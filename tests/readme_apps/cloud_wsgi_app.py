"""The README's plain WSGI app on the cloud backend: ``app = taskutils.mount(my_wsgi_app)``, no ``wrap_wsgi_app``.

``POST /notes?text=T`` enqueues a task that writes the Cloud NDB note ``T`` in a transaction.
"""

from urllib.parse import parse_qs

import taskutils

from readme_apps import cloud_notes

taskutils.configure(backend="cloud")  # project and location: GOOGLE_CLOUD_PROJECT, LOCATION_ID


@taskutils.task
def save(text):
    cloud_notes.write(text, "wsgi")


def my_wsgi_app(environ, start_response):
    if environ["PATH_INFO"] == "/notes" and environ["REQUEST_METHOD"] == "POST":
        save(parse_qs(environ.get("QUERY_STRING", ""))["text"][0])
        start_response("202 Accepted", [("Content-Type", "text/plain")])
        return [b"queued"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


app = taskutils.mount(my_wsgi_app)
