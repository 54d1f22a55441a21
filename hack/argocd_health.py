#!/usr/bin/env python3
"""Runs an Argo CD health check written in Lua over one Kubernetes object, as Argo CD does: the
object (JSON on stdin) is the global `obj`, the table the script returns is the health.

    kubectl get stack web -o json | lupa-python hack/argocd_health.py SCRIPT.lua
    {"status": "Progressing", "message": "..."}

Argo CD uses gopher-lua, a Lua 5.1, with only the base, table and package libraries (and a
reduced `os`), so the script runs in Lua 5.1 with everything else removed: a check that works
here does not depend on a library Argo CD lacks. Needs lupa (`hack/testenv.sh build` installs it
and puts `lupa-python` on the env file's PATH).
"""

import json
import sys

import lupa.lua51

# What Argo CD does not open (lua.go opens package, base, table and a safe os only).
MISSING_LIBRARIES = ("string", "math", "io", "os", "debug", "coroutine", "dofile", "loadfile")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        script = f.read()
    obj = json.load(sys.stdin)

    lua = lupa.lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua_globals = lua.globals()
    for name in MISSING_LIBRARIES:
        lua_globals[name] = None
    lua_globals["obj"] = lua.table_from(obj, recursive=True)
    health = lua.execute(script)
    if health is None:
        print("the script returned nothing", file=sys.stderr)
        return 1
    result = {"status": health["status"], "message": health["message"]}
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
