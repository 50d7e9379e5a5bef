"""Version numbers, requirement strings and environment markers, the small part of PEP 440/508 the
bundle builder needs, in the standard library only.

Inputs: strings such as "2.10.0+cu128", "numba>=0.59", "typing-extensions>=4; python_version<'3.13'".
Outputs: comparable `Version` objects, parsed `Requirement`s, and yes/no answers to "does this
installed version satisfy that requirement" and "does this marker hold on the target image".

Why not `packaging`: it is importable wherever pip or setuptools is (vendored), but not as a
top-level module on a machine with only trm-kit's runtime dependencies, and the builder must run
there. The tests check these functions against `packaging` on many cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VERSION_RE = re.compile(
    r"""^\s*v?
    (?:(?P<epoch>\d+)!)?
    (?P<release>\d+(?:\.\d+)*)
    (?:[-_.]?(?P<pre_l>alpha|beta|preview|pre|a|b|c|rc)[-_.]?(?P<pre_n>\d*))?
    (?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d*))?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d*))?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


class VersionError(ValueError):
    """A version, requirement or marker string that cannot be parsed; the message quotes it."""


@dataclass(frozen=True, order=False)
class Version:
    """A PEP 440 version. Compare with <, ==, ...; `public` drops the local label (+cu128)."""

    text: str
    epoch: int
    release: tuple[int, ...]
    pre: tuple[int, int] | None  # (rank a=0 b=1 rc=2, number)
    post: int | None
    dev: int | None
    local: tuple[int | str, ...] | None

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = _VERSION_RE.match(text)
        if not m:
            raise VersionError(f"not a PEP 440 version: {text!r}")
        pre = (_PRE_RANK[m["pre_l"].lower()], int(m["pre_n"] or 0)) if m["pre_l"] else None
        if m["post_n1"]:
            post = int(m["post_n1"])
        elif m["post_l"]:
            post = int(m["post_n2"] or 0)
        else:
            post = None
        dev = int(m["dev_n"] or 0) if m["dev_l"] else None
        local = None
        if m["local"]:
            local = tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"[-_.]", m["local"]))
        return cls(text.strip(), int(m["epoch"] or 0), tuple(int(p) for p in m["release"].split(".")),
                   pre, post, dev, local)

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None or self.dev is not None

    @property
    def public(self) -> "Version":
        return Version(self.text.split("+")[0], self.epoch, self.release, self.pre, self.post, self.dev, None)

    @property
    def base(self) -> "Version":
        return Version(".".join(map(str, self.release)), self.epoch, self.release, None, None, None, None)

    def key(self) -> tuple:
        """Sort key with packaging's ordering: dev < pre < final < post; no local < any local."""
        release = list(self.release)
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        if self.pre is None and self.post is None and self.dev is not None:
            pre: tuple = (-1,)  # 1.0.dev0 sorts before 1.0a0
        elif self.pre is None:
            pre = (3,)
        else:
            pre = self.pre
        post = (-1,) if self.post is None else (self.post,)
        dev = (1, 0) if self.dev is None else (0, self.dev)
        local = () if self.local is None else tuple((1, p, "") if isinstance(p, int) else (0, 0, p)
                                                    for p in self.local)
        return (self.epoch, tuple(release), pre, post, dev, local)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __lt__(self, other: "Version") -> bool:
        return self.key() < other.key()

    def __le__(self, other: "Version") -> bool:
        return self.key() <= other.key()

    def __gt__(self, other: "Version") -> bool:
        return self.key() > other.key()

    def __ge__(self, other: "Version") -> bool:
        return self.key() >= other.key()

    def __str__(self) -> str:
        return self.text


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name: 'Huggingface_Hub' -> 'huggingface-hub'."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def _prefix_match(candidate: Version, prefix: str) -> bool:
    """==X.Y.* : the candidate's release starts with X.Y (zero-padded), same epoch."""
    want = Version.parse(prefix)
    got = list(candidate.release) + [0] * max(0, len(want.release) - len(candidate.release))
    return candidate.epoch == want.epoch and tuple(got[: len(want.release)]) == want.release


def specifier_contains(spec: str, version: Version | str) -> bool:
    """Does `version` satisfy one specifier clause such as '>=2.1', '~=0.59', '!=1.2.*'?

    Pre-releases are accepted (as pip does for an already-installed version); a local label on
    the candidate (+cu128) is ignored unless the clause names one.
    """
    v = Version.parse(version) if isinstance(version, str) else version
    m = re.match(r"^\s*(===|==|!=|~=|<=|>=|<|>)\s*(\S+)\s*$", spec)
    if not m:
        raise VersionError(f"not a version specifier: {spec!r}")
    op, target = m.groups()
    if op == "===":
        return str(v) == target
    if op in ("==", "!="):
        if target.endswith(".*"):
            hit = _prefix_match(v.public, target[:-2])
        else:
            t = Version.parse(target)
            hit = (v if t.local is not None else v.public) == t
        return hit if op == "==" else not hit
    t = Version.parse(target)
    p = v.public
    if op == ">=":
        return p >= t
    if op == "<=":
        return p <= t
    if op == "<":
        # "<3.0" must not admit 3.0rc1 unless the clause itself is a pre-release
        if not p < t:
            return False
        return t.is_prerelease or not p.is_prerelease or p.base != t.base
    if op == ">":
        if not p > t:
            return False
        if p.post is not None and t.post is None and p.base == t.base:
            return False
        return not (v.local is not None and p.base == t.base)
    # ~=X.Y.Z  ==  >=X.Y.Z, ==X.Y.*
    if len(t.release) < 2:
        raise VersionError(f"~= needs at least two release numbers: {spec!r}")
    prefix = ".".join(map(str, t.release[:-1]))
    if t.epoch:
        prefix = f"{t.epoch}!{prefix}"
    return p >= t and _prefix_match(p, prefix)


@dataclass(frozen=True)
class Requirement:
    """`name[extras] specs ; marker` from a requirement string (no URLs)."""

    name: str  # as written
    specifiers: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    marker: str | None = None
    text: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return canonical_name(self.name)

    @property
    def spec_text(self) -> str:
        return ",".join(self.specifiers)

    def contains(self, version: Version | str) -> bool:
        return all(specifier_contains(s, version) for s in self.specifiers)

    def __str__(self) -> str:
        return f"{self.name}{self.spec_text}"


_REQ_RE = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[^\]]*\])?\s*\(?([^;()@]*)\)?\s*(?:;\s*(.*?))?\s*$")


def parse_requirement(text: str) -> Requirement:
    """'numba>=0.59' -> Requirement('numba', ('>=0.59',)). Direct URLs (`name @ url`) are refused."""
    m = _REQ_RE.match(text)
    if not m:
        raise VersionError(f"not a requirement string (name, optional [extras], specifiers, ; marker): {text!r}")
    name, extras, specs, marker = m.groups()
    spec_list = tuple(s.strip() for s in specs.split(",") if s.strip())
    for s in spec_list:
        _check_spec(s)
    extra_list = tuple(e.strip() for e in (extras or "[]")[1:-1].split(",") if e.strip())
    return Requirement(name, spec_list, extra_list, marker or None, text.strip())


def _check_spec(spec: str) -> None:
    if not re.match(r"^\s*(===|==|!=|~=|<=|>=|<|>)\s*\S+\s*$", spec):
        raise VersionError(f"not a version specifier: {spec!r}")


# ---- environment markers (PEP 508), evaluated for a target image, not for this machine ----------

_VERSION_VARS = {"python_version", "python_full_version", "implementation_version", "platform_release"}
_TOKEN_RE = re.compile(r"""\s*(\(|\)|===|==|!=|~=|<=|>=|<|>|not\s+in\b|in\b|and\b|or\b|'[^']*'|"[^"]*"|[A-Za-z_.]+)""")


def marker_environment(python_version: str, extra: str = "") -> dict[str, str]:
    """Marker variables of a CPython x86_64 Linux image with the given 'X.Y' Python."""
    return {
        "python_version": python_version, "python_full_version": python_version + ".0",
        "implementation_version": python_version + ".0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "platform_release": "",
        "extra": extra,
    }


def evaluate_marker(marker: str, env: dict[str, str]) -> bool:
    """Evaluate a PEP 508 marker ('python_version < "3.12" and extra == "cli"') in `env`.

    One function of ~70 lines on purpose: a recursive-descent parser whose nested rules
    (value, compare, conjunction, disjunction) share one token position.
    """
    tokens = [t for t in _TOKEN_RE.findall(marker)]
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", marker):
        raise VersionError(f"cannot parse environment marker: {marker!r}")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise VersionError(f"environment marker ends too early: {marker!r}")
        pos += 1
        return tokens[pos - 1]

    def value() -> tuple[str, bool]:  # (value, is_variable_name)
        t = take()
        if t[0] in "'\"":
            return t[1:-1], False
        if t not in env:
            raise VersionError(f"unknown marker variable {t!r} in {marker!r}")
        return t, True

    def compare() -> bool:
        if peek() == "(":
            take()
            out = disjunction()
            if take() != ")":
                raise VersionError(f"unbalanced parentheses in marker {marker!r}")
            return out
        left, left_var = value()
        op = re.sub(r"\s+", " ", take())
        right, right_var = value()
        var = left if left_var else right if right_var else ""
        lhs = env[left] if left_var else left
        rhs = env[right] if right_var else right
        if op == "in":
            return lhs in rhs
        if op == "not in":
            return lhs not in rhs
        if var in _VERSION_VARS and op != "===":
            try:
                return specifier_contains(f"{op}{rhs}", lhs)
            except VersionError:
                pass
        if var == "extra":
            lhs, rhs = canonical_name(lhs), canonical_name(rhs)
        if op == "==" or op == "===":
            return lhs == rhs
        if op == "!=":
            return lhs != rhs
        raise VersionError(f"operator {op!r} needs versions on both sides in marker {marker!r}")

    def conjunction() -> bool:
        out = compare()
        while peek() == "and":
            take()
            out = compare() and out
        return out

    def disjunction() -> bool:
        out = conjunction()
        while peek() == "or":
            take()
            out = conjunction() or out
        return out

    result = disjunction()
    if pos != len(tokens):
        raise VersionError(f"unexpected {tokens[pos]!r} in environment marker {marker!r}")
    return result
