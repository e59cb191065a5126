"""MONAI Label's session store with session ids checked by the app's one allow-list (``check_name``).

MONAI Label joins the client's session id to its session folder and, for a "dangling" session, removes that
folder with ``shutil.rmtree``; a session id must therefore be a single safe name before it becomes a path.
"""

from __future__ import annotations

import os

from lib.server.names import check_name
from monailabel.utils.sessions import Sessions


class NameCheckedSessions(Sessions):
    def _checked(self, session_id: str) -> str:
        """A folder the store already holds (its own clean-up walks them) is trusted; any other id is checked."""
        try:
            if isinstance(session_id, str) and session_id in os.listdir(self.store_path):
                return session_id
        except OSError:
            pass
        return check_name("session id", session_id)

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        return super().get_session(self._checked(session_id), update_ts, fetch_cache)

    def remove_session(self, session_id: str):
        return super().remove_session(self._checked(session_id))

    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
        if session_id is not None:
            check_name("session id", session_id)
        return super().add_session(data_file, expiry, uncompress, session_id)


def harden_sessions(sessions):
    """The same store (path, expiry, open sessions) with checked ids; ``None`` (sessions disabled) stays ``None``."""
    if sessions is not None and not isinstance(sessions, NameCheckedSessions):
        sessions.__class__ = NameCheckedSessions
    return sessions
