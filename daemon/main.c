/* pullcache — entry point (placeholder until the CLI lands). */
#include <stdio.h>

int main(void)
{
  printf("pullcache\n");
  return 0;
}
