"""The README's webapp2 app on the cloud backend: ``app = taskutils.mount(webapp2.WSGIApplication(...))``.

``POST /?text=T`` enqueues a task that writes the Cloud NDB note ``T`` in a transaction.
"""

import webapp2

import taskutils

from readme_apps import cloud_notes

taskutils.configure(backend="cloud")  # project and location: GOOGLE_CLOUD_PROJECT, LOCATION_ID


@taskutils.task
def save(text):
    cloud_notes.write(text, "webapp2")


class HomeHandler(webapp2.RequestHandler):
    def post(self):
        save(self.request.get("text"))
        self.response.status_int = 202
        self.response.write("queued")


app = taskutils.mount(webapp2.WSGIApplication([("/", HomeHandler)]))
