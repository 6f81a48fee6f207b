"""Parse and validate a provisioning TOML file into a Plan.

Every problem is collected in one pass and reported with its table path, so a user fixes the
whole file at once instead of one error per run. Two forms are accepted:

    [models.lora.detail-tweaker]            # full form: one table per model
    source = "civitai"                      # optional: inferred from the keys
    version_id = 135867

    [models.vae]                            # simple form: name = URL
    sdxl-vae = "https://huggingface.co/stabilityai/sdxl-vae/resolve/main/sdxl_vae.safetensors"
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from . import categories, links
from .paths import safe_filename
from .plan import CivitaiSpec, Extension, GDriveSpec, HuggingFaceSpec, Item, Plan, Spec, UrlSpec
from .secrets import register_secret

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(Exception):
    """The configuration is wrong; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class ConfigUnreachable(ConfigError):
    """The config (or its lock) could not be fetched: nothing is known to be wrong with it."""


SOURCES = ("huggingface", "civitai", "url", "gdrive")
COMMON_KEYS = {"source", "filename"}
KEYS_BY_SOURCE = {
    "huggingface": COMMON_KEYS | {"repo", "file", "revision", "gated", "include", "exclude", "url"},
    "civitai": COMMON_KEYS | {"version_id", "model_id", "url", "type", "format"},
    "url": COMMON_KEYS | {"url", "headers", "sha256", "size"},
    "gdrive": COMMON_KEYS | {"url", "id"},
}
ALL_KEYS = set().union(*KEYS_BY_SOURCE.values())
TOP_LEVEL_KEYS = {"models", "extensions"}
EXTENSION_KEYS = {"url", "commit", "sha256", "requirements"}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REVISION = re.compile(r"[\w.-]+(/[\w.-]+)*")  # branch, tag, commit, refs/pr/1
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{origin}: not valid TOML: {err}"]) from None


def load_plan(
    text: str, *, models_root: Path, origin: str = "config", env: Mapping[str, str] | None = None
) -> Plan:
    """Validate the TOML text and plan every entry, or raise ConfigError with every problem."""
    env = os.environ if env is None else env
    data = parse_toml(text, origin)
    problems: list[str] = []
    plan = Plan(models_root=models_root.resolve(), items=[])

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"{key}: unknown top-level key{_did_you_mean(key, TOP_LEVEL_KEYS)}")
    models = data.get("models")
    if models is None and "extensions" in data:
        models = {}  # a config of extensions only
    elif models is None:
        problems.append(f"{origin}: no [models] table: add entries like [models.lora.<name>]")
    elif not isinstance(models, dict):
        problems.append("models: must be a table of categories, like [models.lora.<name>]")
        models = {}
    elif not any(isinstance(entries, dict) and entries for entries in models.values()):
        problems.append(f"{origin}: [models] lists no model: add entries like [models.lora.<name>]")

    for category_name, entries in (models or {}).items():
        category = categories.lookup(category_name)
        where = f"models.{category_name}"
        if category is None:
            problems.append(
                f"{where}: unknown category{_did_you_mean(category_name, categories.valid_names())}"
                f" (valid: {', '.join(categories.valid_names())})"
            )
            continue
        if category.removed:
            problems.append(f"{where}: not a folder of SD.Next {categories.PIN['tag']}: {category.removed}")
            continue
        if category.warning:
            plan.warnings.append(f"{where}: {category.warning}")
        if not isinstance(entries, dict):
            problems.append(f'{where}: must be a table of entries, like {where}.<name> = "https://..."')
            continue
        folder = plan.models_root / category.folder
        for name, entry in entries.items():
            item = _plan_entry(category_name, name, entry, folder, env, problems, plan.warnings)
            if item is not None:
                plan.items.append(item)

    extensions = data.get("extensions", {})
    if not isinstance(extensions, dict):
        problems.append(
            'extensions: must be a table, like [extensions.<name>] url = "https://github.com/..."'
        )
        extensions = {}
    for name, entry in extensions.items():
        extension = _extension(name, entry, env, problems)
        if extension is not None:
            plan.extensions.append(extension)

    _check_destinations(plan, problems)
    if problems:
        raise ConfigError(problems)
    return plan


def _plan_entry(
    category: str,
    name: str,
    entry: Any,
    folder: Path,
    env: Mapping[str, str],
    problems: list[str],
    warnings: list[str],
) -> Item | None:
    where = f"models.{category}.{name}"
    found: list[str] = []
    report = found.append

    if isinstance(entry, str):
        entry = {"url": entry}
    elif not isinstance(entry, dict):
        problems.append(f"{where}: must be a URL string or a table, not {type(entry).__name__}")
        return None

    source = entry.get("source")
    if source is None:
        source = _infer_source(entry, env)
        if source is None:
            problems.append(
                f'{where}: cannot tell the source: add "repo" (huggingface), "version_id" or'
                f' "model_id" (civitai) or "url", or set source = "huggingface" | "civitai" | "url"'
            )
            return None
    elif source not in SOURCES:
        problems.append(
            f"{where}.source: unknown source {source!r}{_did_you_mean(str(source), SOURCES)}"
            f" (valid: {', '.join(SOURCES)})"
        )
        return None

    allowed = KEYS_BY_SOURCE[source]
    for key in entry:
        if key not in allowed:
            hint = _did_you_mean(key, allowed)
            if not hint and key in ALL_KEYS:
                hint = f' ("{key}" belongs to another source; this entry is {source})'
            report(f"{where}: unknown key {key!r}{hint}")

    spec = _SPEC_BUILDERS[source](entry, where, env, report)
    filename = _filename(entry, spec, where, report, warnings.append)
    if spec is not None and isinstance(spec, HuggingFaceSpec) and spec.file is None:
        # A whole repository lands in a folder of its own, named after the entry.
        repo_folder = safe_filename(name)
        if repo_folder is None:
            report(f"{where}: the entry name cannot be used as a folder name")
        else:
            folder = folder / repo_folder
        if "filename" in entry:
            report(f'{where}: "filename" needs "file" (a whole repository keeps its file names)')
    problems.extend(found)
    if found or spec is None:
        return None
    return Item(category=category, name=name, spec=spec, folder=folder, filename=filename)


_EXTENSION_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # SD.Next's own rule for its folder
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _extension(name: str, entry: Any, env: Mapping[str, str], problems: list[str]) -> Extension | None:
    """An `[extensions.NAME]` table: a GitHub repository at a commit, or an archive with its sha256."""
    where = f"extensions.{name}"
    found: list[str] = []
    report = found.append
    if not _EXTENSION_NAME.match(name):
        problems.append(
            f"{where}: the name is its folder in sdnext/extensions: use letters, digits, '_', '-', '.'"
        )
        return None
    if name in categories.PIN.get("extensions", {}):
        problems.append(
            f"{where}: SD.Next {categories.PIN['tag']} has a built-in extension of that name and skips"
            " a user extension with it: give this one another name"
        )
        return None
    if not isinstance(entry, dict):
        problems.append(
            f'{where}: must be a table, like url = "https://github.com/OWNER/REPO" and commit = "..."'
        )
        return None
    for key in entry:
        if key not in EXTENSION_KEYS:
            report(f"{where}: unknown key {key!r}{_did_you_mean(key, EXTENSION_KEYS)}")
    url = _string(entry, "url", where, report, required=True)
    commit = _string(entry, "commit", where, report)
    sha256 = _string(entry, "sha256", where, report)
    requirements = None
    if "requirements" in entry:
        requirements = _requirements(entry["requirements"], where, report)
    github = links.github_repository(url, env) if url else None
    if url is None:
        pass
    elif not _is_http_url(url):
        report(f"{where}.url: {url!r} is not an http(s) URL")
    elif github is not None:
        if commit is None:
            report(
                f'{where}: missing "commit": a branch moves, so give the commit to install'
                f" (`git ls-remote {url} HEAD` prints the newest)"
            )
        elif not _COMMIT.match(commit.lower()):
            report(f"{where}.commit: {commit!r} is not a commit: give all 40 hex digits")
        if sha256 is not None:
            report(f'{where}: "sha256" is for archive URLs; a GitHub repository is pinned by "commit"')
    elif commit is not None:
        report(
            f"{where}: only GitHub repositories are fetched by commit; for {urlsplit(url).hostname}"
            ' give the URL of an archive of that commit (.tar.gz or .zip) and its "sha256"'
        )
    elif sha256 is None:
        report(f'{where}: missing "sha256" of the archive (`sha256sum` of the downloaded file)')
    elif not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        report(f"{where}.sha256: must be 64 hex digits (the archive's sha256, as `sha256sum` prints it)")
    problems.extend(found)
    if found or url is None:
        return None
    return Extension(
        name=name,
        url=url.removesuffix("/").removesuffix(".git") if github else url,
        commit=commit.lower() if commit else None,
        sha256=sha256.lower() if sha256 else None,
        requirements=requirements,
        github=github,
    )


def _requirements(value: Any, where: str, report) -> tuple[str, ...] | None:
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        report(f'{where}.requirements: must be a list of requirements, like ["inflection==0.5.1"]')
        return None
    for line in value:
        try:
            Requirement(line)
        except InvalidRequirement as err:
            report(f"{where}.requirements: {line!r} is not a requirement ({err})")
            return None
    return tuple(value)


def _infer_source(entry: dict[str, Any], env: Mapping[str, str]) -> str | None:
    if "repo" in entry:
        return "huggingface"
    if "version_id" in entry or "model_id" in entry:
        return "civitai"
    if "url" in entry:
        if "headers" in entry or not isinstance(entry["url"], str):
            return "url"  # explicit headers: the user wants this exact request
        return _source_of_url(entry["url"], env)
    return None


def _source_of_url(url: str, env: Mapping[str, str]) -> str:
    spec = links.recognise(url, env)
    return {HuggingFaceSpec: "huggingface", CivitaiSpec: "civitai", GDriveSpec: "gdrive"}.get(
        type(spec), "url"
    )


# --- one builder per source: each returns a spec, or None after reporting what is wrong ------


def _huggingface(entry, where, env, report) -> HuggingFaceSpec | None:
    if "url" in entry:  # simple form or an inferred table with a /resolve/ URL
        if "repo" in entry or "file" in entry:
            report(f'{where}: give either "url" or "repo"/"file", not both')
            return None
        spec = links.huggingface_spec(_string(entry, "url", where, report) or "", env)
        if spec is None:
            report(
                f"{where}.url: not a Hugging Face file URL"
                " (expected .../<owner>/<repo>/resolve/<revision>/<file>)"
            )
            return None
        # The URL names repo, revision and file; the other keys must agree or be refused aloud.
        revision = _string(entry, "revision", where, report)
        if revision is not None and revision != spec.revision:
            report(
                f'{where}.revision: "{revision}" but the URL asks for revision "{spec.revision}";'
                " drop one of them"
            )
            return None
        for key in ("include", "exclude"):
            if key in entry:
                report(f'{where}.{key}: filters whole repositories, but "url" names one file; drop it')
                return None
        gated = _flag(entry, "gated", where, report)
        return None if gated is None else dataclasses.replace(spec, gated=gated)
    repo = _string(entry, "repo", where, report, required=True)
    file = _string(entry, "file", where, report)
    revision = _string(entry, "revision", where, report) or "main"
    if not _REVISION.fullmatch(revision) or ".." in revision.split("/"):
        report(f'{where}.revision: {revision!r} is not a branch, tag or commit (like "main" or "v1.0")')
        return None
    gated = bool(_flag(entry, "gated", where, report))
    include = _string_list(entry, "include", where, report)
    exclude = _string_list(entry, "exclude", where, report)
    if repo is not None and not _REPO_ID.match(repo):
        hint = ""
        if "://" in repo:
            hint = ' (give "owner/name", not a URL)'
        report(f'{where}.repo: {repo!r} is not a repository id like "owner/name"{hint}')
        return None
    if file is not None:
        parts = PurePosixPath(file).parts
        if not file or file.startswith("/") or ".." in parts or "\\" in file:
            report(f"{where}.file: {file!r} must be a path inside the repository, without '..'")
            return None
        if include or exclude:
            report(f'{where}: "include"/"exclude" filter whole repositories; drop them or drop "file"')
    if repo is None:
        return None
    return HuggingFaceSpec(repo, file, revision, gated, tuple(include), tuple(exclude))


def _civitai(entry, where, env, report) -> CivitaiSpec | None:
    file_type = _string(entry, "type", where, report)
    file_format = _string(entry, "format", where, report)
    version_id = _positive_int(entry, "version_id", where, report)
    model_id = _positive_int(entry, "model_id", where, report)
    if "url" in entry:
        url = _string(entry, "url", where, report) or ""
        spec = links.civitai_spec(url, env)
        if spec is None:
            report(
                f"{where}.url: not a CivitAI model URL (expected .../models/<model>?modelVersionId="
                f"<version> or .../api/download/models/<version>)"
            )
            return None
        if version_id or model_id:
            report(f'{where}: give either "url" or "version_id"/"model_id", not both')
            return None
        return CivitaiSpec(
            spec.version_id,
            spec.model_id,
            spec.id_from,
            file_type or spec.file_type,
            file_format or spec.file_format,
        )
    if version_id is None and model_id is None:
        if "version_id" not in entry and "model_id" not in entry:
            report(f'{where}: missing "version_id" (or "model_id", or "url" of the model page)')
        return None
    id_from = "version_id" if version_id is not None else "model_id (newest version)"
    return CivitaiSpec(version_id, None if version_id else model_id, id_from, file_type, file_format)


def _url(entry, where, env, report) -> UrlSpec | GDriveSpec | None:
    url = _string(entry, "url", where, report, required=True)
    if url is None:
        return None
    if not _is_http_url(url):
        report(f"{where}.url: {url!r} is not an http(s) URL")
        return None
    if file_id := links.gdrive_file_id(url, env):
        # A Drive link is a confirm page, never the file: always take the Drive flow.
        return GDriveSpec(file_id)
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        report(
            f"{where}.headers: must be a table of strings, like"
            ' headers = { Authorization = "Bearer ${MY_TOKEN}" }'
        )
        return None
    expanded = {}
    for key, value in headers.items():
        if re.search(r"[\r\n]", key + value):
            report(f"{where}.headers.{key}: a header name or value may not hold a line break")
            return None
        expanded[key] = _expand_env(value, f"{where}.headers.{key}", env, report)
    sha256 = _string(entry, "sha256", where, report)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        report(f"{where}.sha256: must be 64 hex digits (the file's sha256, as `sha256sum` prints it)")
        return None
    size = _positive_int(entry, "size", where, report)
    return UrlSpec(url, expanded, sha256=sha256.lower() if sha256 else None, size=size)


def _gdrive(entry, where, env, report) -> GDriveSpec | None:
    if "id" in entry:
        file_id = _string(entry, "id", where, report)
        if file_id is not None and not re.match(r"^[-\w]{10,}$", file_id):
            report(f"{where}.id: {file_id!r} is not a Google Drive file id")
            return None
        return GDriveSpec(file_id) if file_id else None
    url = _string(entry, "url", where, report, required=True)
    if url is None:
        return None
    file_id = links.gdrive_file_id(url, env)
    if file_id is None:
        report(f"{where}.url: not a Google Drive file link (expected .../file/d/<id>/view or ...?id=<id>)")
        return None
    return GDriveSpec(file_id)


_SPEC_BUILDERS = {
    "huggingface": _huggingface,
    "civitai": _civitai,
    "url": _url,
    "gdrive": _gdrive,
}


# --- field helpers ------------------------------------------------------------------------------


def _string(entry, key, where, report, required=False) -> str | None:
    if key not in entry:
        if required:
            report(f'{where}: missing "{key}"')
        return None
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        report(f"{where}.{key}: must be a non-empty string")
        return None
    return value.strip()


def _string_list(entry, key, where, report) -> list[str]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        report(f'{where}.{key}: must be a list of glob patterns, like ["*.json", "unet/*"]')
        return []
    return value


def _flag(entry, key, where, report) -> bool | None:
    """A true/false key (false when missing); None after reporting a value of another kind."""
    value = entry.get(key, False)
    if not isinstance(value, bool):
        report(f"{where}.{key}: must be true or false")
        return None
    return value


def _positive_int(entry, key, where, report) -> int | None:
    if key not in entry:
        return None
    value = entry[key]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        report(f"{where}.{key}: must be a positive number, like {key} = 135867")
        return None
    return value


class LintEnvironment(dict):
    """The environment for an offline lint (`--dry-run --offline`): a variable the config
    references but that is not set is a warning (the real run needs it), not an error."""

    def __init__(self, env: Mapping[str, str]):
        super().__init__(env)
        self.warnings: list[str] = []


def _expand_env(value: str, where: str, env: Mapping[str, str], report) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match[1]
        if name not in env and isinstance(env, LintEnvironment):
            env.warnings.append(f"{where}: references ${{{name}}}, which is not set: a real run needs it")
            return ""
        if name not in env:
            report(f"{where}: references ${{{name}}}, which is not set in the environment")
            return ""
        register_secret(env[name])
        return env[name]

    expanded = _ENV_REF.sub(substitute, value)
    if expanded != value:
        register_secret(expanded)  # the whole header value, e.g. "Bearer <token>"
    return expanded


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _filename(entry, spec: Spec | None, where, report, warn) -> str | None:
    """The planned file name: the entry's `filename`, else what the spec names, else None."""
    if "filename" in entry:
        given = _string(entry, "filename", where, report)
        if given is None:
            return None
        name = safe_filename(given)
        if name is None:
            report(f"{where}.filename: {given!r} has no usable file name")
        elif name != given and re.search(r"[/\\]", given):
            warn(
                f"{where}.filename: {given!r} names folders; only the file name {name!r} is kept"
                " (every file of a category goes into its folder)"
            )
        return name
    if isinstance(spec, HuggingFaceSpec) and spec.file:
        return safe_filename(PurePosixPath(spec.file).name)
    return None


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _check_destinations(plan: Plan, problems: list[str]) -> None:
    seen: dict[Path, str] = {}
    for item in plan.items:
        dest = item.dest
        if not dest.resolve().is_relative_to(plan.models_root):
            problems.append(f"{item.table}: destination {dest} is outside {plan.models_root}")
            continue
        if item.filename is None and not item.is_repository:
            continue
        key = dest
        if key in seen:
            problems.append(
                f'{item.table}: same destination as {seen[key]} ({dest}): give one of them another "filename"'
            )
        else:
            seen[key] = item.table
