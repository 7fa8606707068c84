"""The README's Flask app: ``app.wsgi_app = wrap_wsgi_app(taskutils.mount(app.wsgi_app))``.

``POST /notes?text=T`` enqueues a task that writes the note ``T`` in a transaction.
"""

from flask import Flask, request
from google.appengine.api import wrap_wsgi_app

import taskutils

from readme_apps import notes

app = Flask(__name__)
app.wsgi_app = wrap_wsgi_app(taskutils.mount(app.wsgi_app))


@taskutils.task
def save(text):
    notes.write(text, "flask")


@app.post("/notes")
def add_note():
    save(request.args["text"])
    return "queued", 202
