"""Whether a given Unix user may read, write or run a path, from the mode bits.

``doctor`` asks this about users other than the one running it (the daemon user, the
web server's user), so ``os.access`` cannot answer: this applies the kernel's rule
(owner bits, else group bits for any group the user is in, else the others' bits;
every parent directory must be searchable) to ``stat()`` results. ACLs are not read;
where a project uses them, the answer may be stricter than the truth.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["User"]

_BITS = {
    "r": (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH),
    "w": (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH),
    "x": (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH),
}


@dataclass(frozen=True)
class User:
    """A Unix user with its groups.

    Attributes:
        name: the login name (or ``#<uid>`` when the uid has none).
        uid: the user id.
        gids: the primary group and every supplementary group.
    """

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> User:
        """The user called ``name``.

        Raises:
            KeyError: there is no such user.
        """
        entry = pwd.getpwnam(name)
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name=name, uid=entry.pw_uid, gids=frozenset({entry.pw_gid, *groups}))

    @classmethod
    def from_uid(cls, uid: int) -> User:
        """The user with id ``uid`` (a bare uid when it has no name)."""
        try:
            return cls.named(pwd.getpwuid(uid).pw_name)
        except KeyError:
            return cls(name=f"#{uid}", uid=uid, gids=frozenset())

    @classmethod
    def current(cls) -> User:
        """The user this process runs as, with its groups as the kernel has them now."""
        user = cls.from_uid(os.geteuid())
        return cls(name=user.name, uid=user.uid, gids=frozenset({os.getegid(), *os.getgroups()}))

    def in_group(self, gid: int) -> bool:
        """Whether the user is in group ``gid``."""
        return gid in self.gids

    def may(self, path: Path, modes: str) -> bool:
        """Whether the user may access ``path`` with every mode in ``modes`` ("rwx").

        False when ``path`` or a parent cannot be reached. Root may read and write
        anything and run what has any execute bit, as the kernel allows.
        """
        path = Path(os.path.abspath(path))
        for parent in reversed(path.parents):
            if not self._allowed(parent, "x"):
                return False
        return all(self._allowed(path, mode) for mode in modes)

    def _allowed(self, path: Path, mode: str) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        if self.uid == 0:
            return mode != "x" or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
        owner, group, other = _BITS[mode]
        if st.st_uid == self.uid:
            return bool(st.st_mode & owner)
        if self.in_group(st.st_gid):
            return bool(st.st_mode & group)
        return bool(st.st_mode & other)
