/* Everything a tiny guest program needs. */
#ifndef TINY_H
#define TINY_H

#include "tiny/boot.h"
#include "tiny/io.h"
#include "tiny/lib.h"

#endif
