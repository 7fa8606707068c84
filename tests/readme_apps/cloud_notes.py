"""What the README's cloud-backend apps share: a Cloud NDB model, written by their tasks inside a transaction.

taskutils' handler opens a Cloud NDB client context for each task, so the task code below
needs none of its own; a request that reads or writes entities opens one itself.
"""

from google.cloud import ndb


class ReadmeNote(ndb.Model):
    text = ndb.StringProperty()
    app = ndb.StringProperty()
    writes = ndb.IntegerProperty(default=0)


@ndb.transactional()
def write(text: str, app: str) -> None:
    """Read, then put, in one transaction: the note counts how many times it was written."""
    note = ReadmeNote.get_by_id(text) or ReadmeNote(id=text, text=text, app=app)
    note.writes += 1
    note.put()
