"""The README's webapp2 app: ``app = wrap_wsgi_app(taskutils.mount(webapp2.WSGIApplication(...)))``.

``POST /?text=T`` enqueues a task that writes the note ``T`` in a transaction.
"""

import webapp2
from google.appengine.api import wrap_wsgi_app

import taskutils

from readme_apps import notes


@taskutils.task
def save(text):
    notes.write(text, "webapp2")


class HomeHandler(webapp2.RequestHandler):
    def post(self):
        save(self.request.get("text"))
        self.response.status_int = 202
        self.response.write("queued")


app = wrap_wsgi_app(taskutils.mount(webapp2.WSGIApplication([("/", HomeHandler)])))
