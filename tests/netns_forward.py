"""Run inside a VM host: listen on LISTEN_HOST:LISTEN_PORT and pipe to TARGET_HOST:TARGET_PORT.
Lets presigned URLs that name the test's S3 endpoint (127.0.0.1:PORT) work inside the VM too."""

import contextlib
import socket
import sys
import threading


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def relay(a: socket.socket, b: socket.socket) -> None:
    """Pipe both ways; close both sockets once both directions are done."""
    threads = [threading.Thread(target=pipe, args=pair, daemon=True) for pair in ((a, b), (b, a))]
    for thread in threads:
        thread.start()

    def _close() -> None:
        for thread in threads:
            thread.join()
        a.close()
        b.close()

    threading.Thread(target=_close, daemon=True).start()


def main() -> None:
    listen_host, listen_port, target_host, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((listen_host, listen_port))
    server.listen(64)
    while True:
        conn, _ = server.accept()
        try:
            upstream = socket.create_connection((target_host, target_port))
        except OSError:
            conn.close()
            continue
        relay(conn, upstream)


if __name__ == "__main__":
    main()
