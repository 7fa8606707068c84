"""The README's Flask app on the cloud backend: ``app.wsgi_app = taskutils.mount(app.wsgi_app)``.

``POST /notes?text=T`` enqueues a task that writes the Cloud NDB note ``T`` in a transaction.
"""

from flask import Flask, request

import taskutils

from readme_apps import cloud_notes

taskutils.configure(backend="cloud")  # project and location: GOOGLE_CLOUD_PROJECT, LOCATION_ID

app = Flask(__name__)
app.wsgi_app = taskutils.mount(app.wsgi_app)


@taskutils.task
def save(text):
    cloud_notes.write(text, "flask")


@app.post("/notes")
def add_note():
    save(request.args["text"])
    return "queued", 202
