from aromni.app import main

main()
