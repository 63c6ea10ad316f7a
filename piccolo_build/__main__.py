from piccolo_build.cli import main

main()
