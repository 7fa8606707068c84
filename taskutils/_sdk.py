"""Import the parts of the App Engine SDK that taskutils uses, without their own deprecation warnings.

The SDK (and webapp2) warn about their own deprecated calls while their modules
load (``datetime.utcfromtimestamp``, ``import cgi``, ruamel's ``typ='unsafe'``), and
google.api_core warns on Python 3.10 that its future releases will drop it:
nothing a user of taskutils can fix. They are silenced for these imports only;
the warning filters are left as they were.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"google\.appengine|webapp2|importlib")
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"google\.appengine")
    warnings.filterwarnings(
        "ignore", "You are using a non-supported Python version", FutureWarning, module=r"google\.api_core"
    )
    import webapp2  # noqa: F401
    from google.appengine.api import taskqueue  # noqa: F401
    from google.appengine.ext import deferred, ndb  # noqa: F401
