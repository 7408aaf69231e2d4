# Shared by the shell tests (source it; the caller defines fail MESSAGE).
#
# port_of LOG REGEX PID WHAT: waits up to ~10 s, while PID is alive, for a
# line of LOG matching the sed REGEX (one \(group\) = the port) and prints the
# group (fail, if it must, writes to stderr: stdout is the caller's value).
# LOG may not exist yet: the shell opens a background command's
# redirection after it forks, so a reader can get there first.
port_of() {
  local port="" i
  for ((i = 0; i < 100; i++)); do
    port=$(sed -n "s/$2/\1/p" "$1" 2>/dev/null | head -1)
    [ -n "$port" ] && { echo "$port"; return 0; }
    kill -0 "$3" 2>/dev/null || fail "$4 exited before it was ready" >&2
    sleep 0.1
  done
  fail "$4 not ready within 10 s" >&2
}
