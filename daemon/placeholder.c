/* daemon — placeholder so the library has a source until the handlers land. */
#include "core/pc.h"
