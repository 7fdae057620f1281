# huddle rank bootstrap, run by the remote login shell as
#   exec sh -c '<this>' huddle-rank PROGRAM ARGS...
# stdin: "<n>\n" and n bytes of shell that export the job's environment and
# cd; then frames from the launcher: "D <n>\n"+n bytes for the program's
# stdin, "E\n" at its end, "S <SIG>\n" to signal the job. EOF on stdin means
# the launcher or its connection is gone: everything of this session stops.
# "Everything" is the process group, which sshd makes afresh per session.
# take N: copy exactly N bytes of stdin. GNU head reads no further than
# asked; elsewhere dd one byte at a time is the portable exact copy.
if head --version 2>/dev/null | grep -q coreutils; then
  take() { head -c "$1"; }
else
  take() { dd bs=1 count="$1" 2>/dev/null; }
fi
IFS= read -r n || exit 96
eval "$(take "$n")" || exit 96
d=$(mktemp -d) && mkfifo "$d/in" || exit 96
# Survive the signals meant for the program, so its status (128+N when a
# signal killed it) reaches ssh as an exit status; one that comes before the
# program starts means it never starts. A handler, not "ignore": the program
# must begin with the default actions.
x=
trap 'x=130' INT
trap 'x=143' TERM
trap 'x=129' HUP
# With the connection gone, the shell's own report of a program killed by a
# signal ("Terminated") meets a closed stderr; SIGPIPE must not end the
# bootstrap before it stops the watcher below and reports the status.
trap : PIPE
exec 4<&0
{
  trap "" TERM
  while IFS= read -r h; do
    case $h in
      "D "*) take "${h#D }" | { cat >&3 || cat >/dev/null; } ;;
      E) exec 3>&- ;;
      "S "*) kill -s "${h#S }" 0 ;;
    esac
  done
  kill -s TERM 0
  # A TERM that lands between fork and exec of the program is caught by the
  # handler it still has; this covers that.
  sleep "$huddle_grace"
  kill -s KILL 0
} <&4 3>"$d/in" >/dev/null 2>&1 &
w=$!
exec 5<"$d/in" 4<&-
rm -rf "$d"
s=$x
if [ -z "$x" ]; then
  "$@" <&5 5<&-
  s=$?
fi
kill -s TERM 0
kill -s KILL $w
exit "$s"
