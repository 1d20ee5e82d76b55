from imgfarm.cli import main

main()
