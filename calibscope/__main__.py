from calibscope.cli import main

main()
