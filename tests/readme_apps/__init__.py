"""The README's example apps (plain WSGI, webapp2, Flask), each mounted as "Install and mount" says.

``wsgi_app``, ``webapp2_app`` and ``flask_app`` use bundled services (inside ``wrap_wsgi_app``, a
bundled-ndb model); ``cloud_*`` are the same apps on the cloud backend (no ``wrap_wsgi_app``, a
Cloud NDB model).
"""
