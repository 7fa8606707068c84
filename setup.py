from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="taskutils-gae",
    version="0.1.0",
    description="Run any Python callable as a Google App Engine push task: @task",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["taskutils", "taskutils.*"]),
    package_data={"taskutils": ["py.typed"], "taskutils.webconsole": ["static/*.css", "static/*.js"]},
    python_requires=">=3.10",
    # What both backends need: the pickler and the handler's framework.
    install_requires=[
        "cloudpickle>=2.2",
        "webapp2>=3.0.0b1",
        # webapp2 imports cgi, which Python 3.13 no longer ships.
        "legacy-cgi>=2.6; python_version >= '3.13'",
    ],
    extras_require={
        # The App Engine backend (bundled services: the taskqueue SDK, bundled Datastore), and
        # the local server (python -m taskutils serve) and task_testbed, on Google's stubs.
        "appengine": [
            "appengine-python-standard>=1.1.6",
            "waitress>=2.1",
        ],
        # The cloud backend: the Cloud Tasks client, Cloud Datastore through Cloud NDB, and
        # the RSA verification of the OIDC tokens Cloud Tasks attaches.
        "cloud": [
            "google-cloud-tasks>=2.25",  # BatchCreateTasks
            "google-cloud-ndb>=2.3",
            "cryptography>=41",
        ],
        "test": [
            "appengine-python-standard>=1.1.6",
            "waitress>=2.1",
            "google-cloud-tasks>=2.25",  # BatchCreateTasks
            "google-cloud-ndb>=2.3",
            "cryptography>=41",
            "a2wsgi>=1.10",
            "fastapi>=0.100",
            "httpx>=0.24",
            "pytest>=7",
            "webtest>=3",
            "hypothesis>=6",
            "flask>=2",
            # Newer selenium needs urllib3 2, which appengine-python-standard does not allow: without
            # this bound pip tries every release before settling on 4.32.
            "selenium>=4.10,<4.33",
            "opentelemetry-sdk>=1.20",
        ],
    },
    entry_points={
        "pytest11": ["taskutils = taskutils.pytest_plugin"],
        "console_scripts": ["taskutils = taskutils.__main__:run"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: Pytest",
        "License :: OSI Approved :: Apache Software License",
    ],
)
