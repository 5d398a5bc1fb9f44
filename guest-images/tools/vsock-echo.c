/*
 * vsock-echo: a static helper the linux-tier tests put into the guest's initramfs.
 *   vsock-echo listen PORT            accept one connection, echo what it reads, exit
 *   vsock-echo connect CID PORT MSG   send MSG, print the reply, exit
 */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what)
{
    perror(what);
    return 1;
}

int main(int argc, char **argv)
{
    struct sockaddr_vm a = { .svm_family = AF_VSOCK };
    char buf[4096];
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return die("socket");
    if (argc == 3 && !strcmp(argv[1], "listen")) {
        a.svm_cid = VMADDR_CID_ANY;
        a.svm_port = atoi(argv[2]);
        if (bind(s, (void *)&a, sizeof(a)) < 0 || listen(s, 1) < 0)
            return die("bind/listen");
        printf("vsock-echo: listening on %u\n", a.svm_port);
        fflush(stdout);
        int c = accept(s, NULL, NULL);
        if (c < 0)
            return die("accept");
        ssize_t n;
        while ((n = read(c, buf, sizeof(buf))) > 0)
            if (write(c, buf, n) != n)
                return die("write");
        close(c);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "connect")) {
        a.svm_cid = atoi(argv[2]);
        a.svm_port = atoi(argv[3]);
        if (connect(s, (void *)&a, sizeof(a)) < 0)
            return die("connect");
        if (write(s, argv[4], strlen(argv[4])) < 0)
            return die("write");
        shutdown(s, SHUT_WR);
        ssize_t n, got = 0;
        while ((n = read(s, buf + got, sizeof(buf) - 1 - got)) > 0)
            got += n;
        buf[got] = 0;
        printf("vsock-echo: reply: %s\n", buf);
        return 0;
    }
    fprintf(stderr, "usage: vsock-echo listen PORT | connect CID PORT MSG\n");
    return 2;
}
