/* http — placeholder so the library has a source until srv.c lands. */
#include "http/srv.h"
