# shellcheck shell=bash
# Sourced by scripts/serve and scripts/demo: create .venv and install the project into it.
#
# css_setup_venv: make sure $CSS_ROOT/.venv has the core and every plugins/*/ installed.
# The install is skipped when a stamp in .venv matches a hash of every pyproject.toml,
# the set of plugin directories and the interpreter, so a second run takes well under a
# second. The packages are installed editable: code changes need no reinstall, and a
# plugin directory that disappears is uninstalled on the next run.

CSS_ROOT="${CSS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CSS_VENV="$CSS_ROOT/.venv"

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

# uv if it is on PATH or in .venv-tools (scripts/test installs it there); empty otherwise.
css_find_uv() {
    if command -v uv >/dev/null 2>&1; then
        command -v uv
    elif [ -x "$CSS_ROOT/.venv-tools/bin/uv" ]; then
        printf '%s\n' "$CSS_ROOT/.venv-tools/bin/uv"
    fi
}

css_plugin_dirs() {
    local dir
    for dir in "$CSS_ROOT"/plugins/*/; do
        [ -f "$dir/pyproject.toml" ] && printf '%s\n' "${dir%/}"
    done
    return 0
}

# A hash of what decides the install: every pyproject.toml, the plugin set, the interpreter.
css_install_key() {
    "$CSS_VENV/bin/python" - "$CSS_ROOT" <<'PY'
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
digest = hashlib.sha256(sys.version.encode())
for path in [root / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]:
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

    local -a dirs=("$CSS_ROOT") editable=()
    local dir
    while IFS= read -r dir; do dirs+=("$dir"); done < <(css_plugin_dirs)
    for dir in "${dirs[@]}"; do editable+=(-e "$dir"); done
    local shown="${dirs[*]:1}"
    css_say "==> installing the service and its plugins into .venv: . ${shown//"$CSS_ROOT"\//}"
    uv="$(css_find_uv)"
    if [ -n "$uv" ]; then
        "$uv" pip install --quiet --compile-bytecode --python "$CSS_VENV/bin/python" "${editable[@]}" || return 1
    else
        "$CSS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${editable[@]}" || return 1
    fi
    # Bytecode for the editable sources too (pip and uv compile only what they put in the
    # venv): without it each worker compiles ~700 modules at start-up, which is slower and
    # leaves ~6 MB more in it (bench/RESULTS.md).
    "$CSS_VENV/bin/python" -m compileall -q "$CSS_ROOT/css_core" "${dirs[@]:1}" >/dev/null || return 1

    # A plugin whose directory is gone (or renamed) must not keep serving.
    local -a stale=()
    local name
    while IFS= read -r name; do stale+=("$name"); done < <("$CSS_VENV/bin/python" - "$CSS_ROOT" <<'PY'
import pathlib, sys, tomllib
from importlib.metadata import distributions
root = pathlib.Path(sys.argv[1])
wanted = {tomllib.loads(p.read_text())["project"]["name"].lower().replace("_", "-")
          for p in [root / "pyproject.toml", *root.glob("plugins/*/pyproject.toml")]}
for dist in distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name not in wanted and any(ep.group == "css_inference_service" for ep in dist.entry_points):
        print(dist.metadata["Name"])
PY
    )
    if [ "${#stale[@]}" -gt 0 ]; then
        css_say "==> uninstalling plugins that are no longer in plugins/: ${stale[*]}"
        if [ -n "$uv" ]; then
            "$uv" pip uninstall --quiet --python "$CSS_VENV/bin/python" "${stale[@]}" || return 1
        else
            "$CSS_VENV/bin/python" -m pip uninstall --quiet --yes "${stale[@]}" || return 1
        fi
    fi
    printf '%s\n' "$key" >"$stamp"
}
