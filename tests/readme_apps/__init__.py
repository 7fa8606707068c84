"""The README's example apps (plain WSGI, webapp2, Flask), each mounted as "Install and mount" says."""
