"""An app wrapped in ``wrap_wsgi_app`` that does not mount the task handler: ``serve`` mounts it beside."""

from __future__ import annotations

from deployed_wsgi import my_wsgi_app
from google.appengine.api import wrap_wsgi_app

app = wrap_wsgi_app(my_wsgi_app)
