#include "commands/commands.h"

int main(int argc, char** argv) { return spool::cli::Run(argc, argv); }
