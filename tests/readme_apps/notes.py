"""What the README apps share: a Datastore model, written by their tasks inside a transaction."""

from google.appengine.ext import ndb


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
