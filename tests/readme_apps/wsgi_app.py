"""The README's plain WSGI app: ``app = wrap_wsgi_app(taskutils.mount(my_wsgi_app))``.

``POST /notes?text=T`` enqueues a task that writes the note ``T`` in a transaction.
"""

from urllib.parse import parse_qs

from google.appengine.api import wrap_wsgi_app

import taskutils

from readme_apps import notes


@taskutils.task
def save(text):
    notes.write(text, "wsgi")


def my_wsgi_app(environ, start_response):
    if environ["PATH_INFO"] == "/notes" and environ["REQUEST_METHOD"] == "POST":
        save(parse_qs(environ.get("QUERY_STRING", ""))["text"][0])
        start_response("202 Accepted", [("Content-Type", "text/plain")])
        return [b"queued"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


app = wrap_wsgi_app(taskutils.mount(my_wsgi_app))
