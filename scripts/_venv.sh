# shellcheck shell=bash
# Sourced by scripts/serve, scripts/demo and scripts/test: create .venv and install the
# project into it; find or install the pinned uv.
#
# css_setup_venv: make sure $CSS_ROOT/.venv has the core and every plugins/*/ installed, with
# exactly the versions of uv.lock (`uv sync --frozen` after `uv lock --check`: a lock that no
# longer matches the pyproject.toml files is an error that says to run `uv lock`). The install
# is skipped when a stamp in .venv matches a hash of uv.lock, every pyproject.toml, the set of
# plugin directories and the interpreter, so a second run takes well under a second. The
# packages are installed editable: code changes need no reinstall; the sync is exact, so a
# plugin directory that disappears (and so leaves uv.lock) is uninstalled on the next run.

CSS_ROOT="${CSS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CSS_VENV="$CSS_ROOT/.venv"
CSS_TOOLS="$CSS_ROOT/.venv-tools"
# The tools' exact versions, installed into .venv-tools by pip: uv by scripts/serve when no
# uv of at least CSS_UV_MIN (pyproject.toml's [tool.uv] required-version) is found, nox and uv
# by scripts/test. Moving them is a change like any other: edit, run scripts/test, commit.
CSS_UV_VERSION="0.13.9"
CSS_UV_MIN="0.13"
# shellcheck disable=SC2034 # used by scripts/test
CSS_NOX_VERSION="2026.10.20"
# uv trusts the system's certificate store too, as pip does (a TLS-intercepting proxy's CA)
if [ -z "${UV_NATIVE_TLS:-}" ]; then
    export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"
fi

css_say() { printf '%s\n' "$*" >&2; }

# The first of $PYTHON, python3, python3.13, python3.12, python3.11 that is Python 3.11+.
css_find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    css_say "error: Python 3.11 or newer is needed (tried \$PYTHON, python3, python3.13, python3.12, python3.11)."
    css_say "       Install one (e.g. 'pyenv install 3.12', or your system's python3.11+ with its venv module),"
    css_say "       or point PYTHON at it: PYTHON=/path/to/python3.12 $0"
    return 1
}

# Succeeds if the uv at $1 runs and is at least version $CSS_UV_MIN.
css_uv_is_recent() {
    local version
    version="$("$1" --version 2>/dev/null)" || return 1
    version="${version#uv }"
    version="${version%% *}"
    printf '%s\n%s\n' "$CSS_UV_MIN" "$version" | awk -F. '
        NR == 1 { for (i = 1; i <= 3; i++) min[i] = $i + 0 }
        NR == 2 { for (i = 1; i <= 3; i++) { v = $i + 0; if (v != min[i]) exit !(v > min[i]) } }'
}

# The uv to use: .venv-tools' (the pinned one, from scripts/test or an earlier run), else uv on
# PATH if it is recent enough; empty otherwise.
css_find_uv() {
    local uv
    for uv in "$CSS_TOOLS/bin/uv" "$(command -v uv 2>/dev/null || true)"; do
        if [ -n "$uv" ] && [ -x "$uv" ] && css_uv_is_recent "$uv"; then
            printf '%s\n' "$uv"
            return 0
        fi
    done
    return 0
}

# css_find_uv, or else the pinned uv installed into .venv-tools with pip (needs only python3).
css_ensure_uv() {
    local uv python
    uv="$(css_find_uv)"
    if [ -z "$uv" ]; then
        python="$(css_find_python)" || return 1
        css_say "==> installing uv==$CSS_UV_VERSION into .venv-tools (no uv >= $CSS_UV_MIN found)"
        if ! "$CSS_TOOLS/bin/python" -c '' >/dev/null 2>&1; then
            rm -rf "$CSS_TOOLS"
            "$python" -m venv "$CSS_TOOLS" || {
                css_say "error: '$python -m venv' failed: install your system's venv module (e.g. apt-get install python3-venv)"
                return 1
            }
        fi
        "$CSS_TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$CSS_UV_VERSION" || return 1
        uv="$CSS_TOOLS/bin/uv"
    fi
    printf '%s\n' "$uv"
}

css_plugin_dirs() {
    local dir
    for dir in "$CSS_ROOT"/plugins/*/; do
        [ -f "$dir/pyproject.toml" ] && printf '%s\n' "${dir%/}"
    done
    return 0
}

# A hash of what decides the install: uv.lock, every pyproject.toml, the plugin set, the interpreter.
css_install_key() {
    "$CSS_VENV/bin/python" - "$CSS_ROOT" <<'PY'
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
digest = hashlib.sha256(sys.version.encode())
for path in [root / "uv.lock", root / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]:
    digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
print(digest.hexdigest())
PY
}

css_setup_venv() {
    local python uv key stamp="$CSS_VENV/.css-install-stamp"
    if ! "$CSS_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        python="$(css_find_python)" || return 1
        css_say "==> creating .venv with $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
        rm -rf "$CSS_VENV"
        if ! "$python" -m venv "$CSS_VENV" >/dev/null 2>&1; then
            uv="$(css_find_uv)"
            rm -rf "$CSS_VENV"
            if [ -n "$uv" ]; then
                "$uv" venv --quiet --seed --python "$(command -v "$python")" "$CSS_VENV" || return 1
            else
                css_say "error: '$python -m venv' failed: install your system's venv module (e.g. apt-get install python3-venv)"
                return 1
            fi
        fi
    fi

    key="$(css_install_key)" || return 1
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        return 0
    fi

    uv="$(css_ensure_uv)" || return 1
    local -a dirs=("$CSS_ROOT")
    local dir
    while IFS= read -r dir; do dirs+=("$dir"); done < <(css_plugin_dirs)
    if ! (cd "$CSS_ROOT" && "$uv" lock --check --quiet); then
        css_say "error: uv.lock does not match the pyproject.toml files (a dependency or a plugins/*/ directory"
        css_say "       was added, removed or changed): run '$uv lock' in $CSS_ROOT, then commit uv.lock"
        return 1
    fi
    local shown="${dirs[*]:1}"
    css_say "==> installing the service and its plugins into .venv from uv.lock: . ${shown//"$CSS_ROOT"\//}"
    # Exact: whatever uv.lock does not list (a plugin that left plugins/) is uninstalled.
    (cd "$CSS_ROOT" && UV_PROJECT_ENVIRONMENT="$CSS_VENV" "$uv" sync --frozen --quiet --all-packages \
        --no-default-groups --compile-bytecode --python "$CSS_VENV/bin/python") || return 1
    # Bytecode for the editable sources too (uv compiles only what it puts in the venv):
    # without it each worker compiles its modules at start-up, which is slower and keeps more
    # memory (bench/RESULTS.md).
    "$CSS_VENV/bin/python" -m compileall -q "$CSS_ROOT/css_core" "${dirs[@]:1}" >/dev/null || return 1
    printf '%s\n' "$key" >"$stamp"
}
