"""Which keys may sign which kinds of artifact (`[artifacts] key_kinds`).

    [artifacts]
    public_keys = ["/etc/edge-agent/operator.pub"]             # the operator: models, tables, validation sets, labels
    key_kinds   = ["/etc/edge-agent/builder-orin.pub=engine"]  # a designated builder: engine plans, nothing else

Each `key_kinds` entry is `KEY=KIND[,KIND...]`; KEY is a key id (16 hex digits), a public key as 64 hex digits, or a
PEM file (a key given this way is trusted for its kinds without being listed in `public_keys` too); kinds are
separated by "," or "+" (use "+" in an environment variable, whose lists split on ","). A key listed here may
sign exactly its kinds. A key not listed may sign every kind except the restricted ones (`engine`):
a plan installs only when a key named for engines signed it, so neither the operator's publishing key nor a
compromised device (which holds no signing key at all) can get a plan onto a device. An engine artifact is never
accepted unsigned, whatever `allow_unsigned` says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, Mapping

from agent.fleet.artifact_protocol import ArtifactError, ArtifactManifest, UnsignedManifestError
from agent.fleet.signing import SigningKeyError, key_id, load_public_key

ENGINE_KIND = "engine"
RESTRICTED_KINDS: FrozenSet[str] = frozenset({ENGINE_KIND})  # only keys named for them may sign these
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class KindNotTrustedError(ArtifactError):
    """The manifest's signature is good, but its key is not trusted for this kind of artifact."""

    code = "kind_not_trusted"


@dataclass
class KindTrust:
    kinds: Dict[str, FrozenSet[str]] = field(default_factory=dict)  # key id -> the kinds it may sign
    keys: Dict[str, Any] = field(default_factory=dict)  # key id -> public key, for keys given by value or file

    @classmethod
    def parse(cls, entries: Iterable[str]) -> KindTrust:
        trust = cls()
        for entry in entries:
            spec, sep, kinds_text = str(entry).rpartition("=")
            spec = spec.strip()
            kinds = frozenset(k for k in re.split(r"[,+/\s]+", kinds_text) if k)  # "+" too: env lists split on ","
            if not sep or not spec or not kinds:
                raise SigningKeyError(f"artifacts.key_kinds: {entry!r} is not KEY=KIND[,KIND...]")
            bad = sorted(k for k in kinds if not _KIND.match(k))
            if bad:
                raise SigningKeyError(f"artifacts.key_kinds: {entry!r}: {bad} are not kind names")
            if _KEY_ID.match(spec):
                ident = spec
            else:
                public = load_public_key(spec)
                ident = key_id(public)
                trust.keys[ident] = public
            trust.kinds[ident] = trust.kinds.get(ident, frozenset()) | kinds
        return trust

    def trusts_any_key_for(self, kind: str) -> bool:
        """Whether some key is named for `kind`: without one, a restricted kind (engine plans) can never be accepted."""
        return any(kind in kinds for kinds in self.kinds.values())

    def allowed(self, ident: str, kind: str) -> bool:
        if ident in self.kinds:
            return kind in self.kinds[ident]
        return kind not in RESTRICTED_KINDS

    def check(self, manifest: ArtifactManifest, verdict: str) -> None:
        """After the signature check (`verdict` from verify_manifest): may this key sign this kind?"""
        ident = manifest.artifact_id[:12]
        if manifest.kind in RESTRICTED_KINDS and verdict != "signed":
            raise UnsignedManifestError(
                f"artifact {ident}: a {manifest.kind} artifact must be signed by a key trusted for {manifest.kind} "
                "(artifacts.key_kinds); artifacts.allow_unsigned does not cover it"
            )
        if verdict == "signed" and not self.allowed(manifest.key_id, manifest.kind):
            named = ", ".join(f"{k}={'/'.join(sorted(v))}" for k, v in sorted(self.kinds.items())) or "none"
            raise KindNotTrustedError(
                f"artifact {ident}: key {manifest.key_id} signed a {manifest.kind} artifact, but it is not trusted for "
                f"{manifest.kind} (artifacts.key_kinds: {named})"
            )

    def public_keys(self, configured: Mapping[str, Any]) -> Dict[str, Any]:
        merged = dict(configured)
        merged.update(self.keys)
        return merged
