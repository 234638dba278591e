from simmoe.cli import main

main()
