# Shared by the bench scripts (sourced): installs with apt-get what is
# missing, once, idempotently.
#
#   need_tools nginx:nginx haproxy:haproxy h2load:nghttp2-client
#
# Each argument is COMMAND:DEBIAN_PACKAGE; the package is installed when the
# command is neither on PATH nor in /usr/sbin. Afterwards /usr/sbin and /sbin
# are on PATH (nginx and haproxy live there).
need_tools() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        printf '[bench] installing: %s\n' "${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
}
