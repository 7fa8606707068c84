"""A webapp2 app deployed as the README says: ``wrap_wsgi_app(taskutils.mount(webapp2.WSGIApplication(...)))``."""

from __future__ import annotations

import json

import webapp2
from deployed_common import start, stats
from google.appengine.api import wrap_wsgi_app

import taskutils


class Start(webapp2.RequestHandler):
    def post(self) -> None:
        self.response.content_type = "application/json"
        self.response.write(json.dumps(start(self.request.get("key"), int(self.request.get("n")))))


class Stats(webapp2.RequestHandler):
    def get(self) -> None:
        self.response.content_type = "application/json"
        self.response.write(json.dumps(stats(self.request.get("key"))))


app = wrap_wsgi_app(taskutils.mount(webapp2.WSGIApplication([("/start", Start), ("/stats", Stats)])))
